"""CLI verbs: each module defines register(subparsers). See gaugeflow.cli."""
