"""The wire: the one frame format shared with the gateware, TCP links between sites, PSEQ arithmetic."""
