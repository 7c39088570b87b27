"""Reports computed from stored per-example predictions: leaderboards with paired bootstrap intervals."""

from lifebench.report.leaderboard import Cell, Leaderboard, build_leaderboard

__all__ = ["Cell", "Leaderboard", "build_leaderboard"]
