"""ULX3S with an LFE5U-85F (CABGA381, 25 MHz) for the journal engine.

UART 0 is the on-board FTDI (FPGA rx = M1, tx = L4), LEDs 0..3 are the
first four of the eight user LEDs (B2 C2 C1 D2); see docs/boards.md.
"""

import os

from amaranth_boards.ulx3s import ULX3S_85F_Platform

__all__ = ["Platform", "RING_SIZE", "MEMORY", "DESC_BATCH", "ring", "program_command"]


class Platform(ULX3S_85F_Platform):
    """amaranth-boards' ULX3S 85F, buildable without openFPGALoader installed."""

    @property
    def required_tools(self):
        # openFPGALoader only programs the board; upstream makes every build
        # require it. Programming checks for it itself (program_command).
        return [tool for tool in super().required_tools if tool != "openFPGALoader"]


#: Default ring in bytes: 64 KiB of the 85F's 208 EBRs (18 kbit each), so
#: block RAM holds it with room to spare.
RING_SIZE = 65536

#: Data memory: the ring size (None), so both ring kinds: data rings up to
#: RING_SIZE, descriptor rings up to 2**40.
MEMORY = None

#: JNLDESC batches (docs/protocol.md, "JNLDESC batches"): the most
#: descriptors a JNLDESC may carry (all of DESC_BATCH).
DESC_BATCH = 64

#: The engine's ring memory: its default (``Memory``, inferred as DP16KD).
ring = None

#: nextpnr's name for a logic cell (a LUT4 and a flip-flop) in its report
LC_NAME = "TRELLIS_COMB"

#: the file the programmer loads
BITSTREAM = "bit"


def program_command(build_dir, name="top"):
    """The command that loads the bitstream into the FPGA's SRAM config."""
    tool = os.environ.get("OPENFPGALOADER", "openFPGALoader")
    return [tool, "-b", "ulx3s", "-m", os.path.join(build_dir, f"{name}.bit")]
