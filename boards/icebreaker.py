"""iCEBreaker (iCE40UP5K-SG48, 12 MHz) for the journal engine.

UART 0 is the FTDI's second channel (FPGA rx = pin 6, tx = pin 9). LEDs 0
and 1 are the red (pin 11) and green (pin 37) LEDs on the main board, LEDs
2.. those of the break-off PMOD on PMOD2 (as shipped, snapped on); see
docs/boards.md.
"""

import os

from amaranth_boards.icebreaker import ICEBreakerPlatform

from .mac16 import DSPSequencer, DSPTimestamp
from .spram import SPRAMRing

__all__ = ["Platform", "RING_SIZE", "MEMORY", "DESC_BATCH", "ring", "timestamp", "sequencer",
           "program_command"]


class Platform(ICEBreakerPlatform):
    """amaranth-boards' iCEBreaker with the break-off PMOD's LEDs as led 2..6."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_resources(self.break_off_pmod)


#: Default ring in bytes: all four SPRAMs (128 KiB), leaving the 30 EBRs
#: (15 KiB) to FIFOs. Without data memory (MEMORY) it is only the size of
#: the descriptor ring after reset: the relay's LOAD RING sets its own.
RING_SIZE = 131072

#: Data memory of the default build: none. The engine with both ring kinds
#: and offsets for 2**40-byte rings needs 6 502 LCs of the UP5K's 5 280
#: (nextpnr); without data memory (descriptor rings only: no ring memory,
#: walk or read-out) it fits (docs/hardware.md, "Resources").
#: ``tricopy board build --board icebreaker --data-memory`` builds the other.
MEMORY = 0


#: JNLDESC batches (docs/protocol.md, "JNLDESC batches"): the most
#: descriptors a JNLDESC may carry; 1 is an engine without batches, which
#: refuses a batch with BAD_LENGTH (the relay then sends one by one). With
#: batches of 64 the top needs 5 085 LCs of the UP5K's 5 280, past the
#: 5 000 that tests/test_board_build.py allows (docs/hardware.md, "JNLDESC
#: batches in the gateware"); ``--desc-batch 64`` builds it.
DESC_BATCH = 1


def ring(depth):
    """The engine's ring memory on this board, with data memory: SPRAM
    (``JournalEngine(ring=)``)."""
    return SPRAMRing(depth)

#: The engine's timestamp unit and sequence counter (``JournalEngine(timestamp=,
#: sequencer=)``): their 64-bit counters in four of the UP5K's eight DSPs,
#: which the top leaves unused otherwise (boards/mac16.py; docs/hardware.md,
#: "UP5K timing, thirteenth step").
timestamp = DSPTimestamp
sequencer = DSPSequencer

#: nextpnr's name for a logic cell in its utilisation report
LC_NAME = "ICESTORM_LC"

#: the file the programmer loads
BITSTREAM = "bin"


def program_command(build_dir, name="top"):
    """The command that writes the bitstream to the board's SRAM config."""
    return [os.environ.get("ICEPROG", "iceprog"), os.path.join(build_dir, f"{name}.bin")]
