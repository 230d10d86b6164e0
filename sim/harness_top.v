// The sim harness's top: the Amaranth `engine` with its rx stream fed from a
// two-entry FIFO and its tx stream always ready (sim/harness.cpp drives it).
//
// Why a wrapper and not the engine's ports directly: the simulator evaluates
// the logic that depends combinationally on a top-level input at every eval(),
// and the harness evaluated twice per cycle (clk low, clk high; one eval per
// cycle since 2026-12-07, below). Fed straight from the harness, rx.payload
// and rx.valid reach the frame parser and the CRCs, so a good part of the
// design ran twice per cycle. Behind this FIFO the harness's inputs go to
// registers only and IN_READY is a register output, so an eval computes
// nothing combinational of its own. Not even the FIFO's put (valid &
// ready) is a wire: a net on an input, however small, gives every eval an
// input-combinational phase of its own (Verilator's `ico`: ~50 instructions
// a cycle), so it is spelt inside the clocked block. The engine sees the same byte
// stream, one cycle later; the FIFO still takes one byte per cycle.
// tx.ready is tied to 1 (the harness buffers without bound), so the logic
// that waits for it folds away at compile time.
// `edge clk`: every toggle of clk is a clock cycle, one eval() each; the
// engine's registers are rewritten to match (sim/build.py, _one_edge_a_cycle).
module harness_top(
    input wire clk,
    input wire rst,
    input wire in_valid,
    input wire [7:0] in_data,
    output wire in_ready,
    output wire out_valid,
    output wire [7:0] out_data
);
    reg [7:0] q0, q1;
    reg [1:0] count;
    reg rst_q;
    wire rx_ready;
    wire take = (count != 2'd0) & rx_ready;

    assign in_ready = count != 2'd2;

    engine engine (
        .clk(clk),
        .rst(rst_q),
        .rx__valid(count != 2'd0),
        .rx__payload(q0),
        .rx__ready(rx_ready),
        .tx__valid(out_valid),
        .tx__payload(out_data),
        .tx__ready(1'b1),
        .full(),
        .nak()
    );

    always @(edge clk) begin
        rst_q <= rst;
        if (rst) begin
            count <= 2'd0;
        end else begin
            case ({in_valid & in_ready, take})   // put, take
                2'b10: begin
                    if (count == 2'd0) q0 <= in_data; else q1 <= in_data;
                    count <= count + 2'd1;
                end
                2'b01: begin
                    q0 <= q1;
                    count <= count - 2'd1;
                end
                2'b11: begin
                    if (count == 2'd1) q0 <= in_data;
                    else begin q0 <= q1; q1 <= in_data; end
                end
                default: ;
            endcase
        end
    end
endmodule
