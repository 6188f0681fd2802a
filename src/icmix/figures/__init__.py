"""Figure helpers shared by experiments and commands."""
