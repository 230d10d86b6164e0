"""tricopy."""
