"""The relay's journal volume: the ring store (patent Fig. 2) and its group commit."""
