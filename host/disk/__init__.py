"""Local disk: data volumes (PVOL/SVOL) and small state files that survive a crash whole."""
