"""far-export: checkpoint -> reference model -> exporters -> graphs -> builders -> engines -> runtime."""
__version__ = "0.1.0"
