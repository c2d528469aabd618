import sys
from pathlib import Path

# Lets the op tests import their shared tolerance table (tests/ops/_tolerances.py).
sys.path.insert(0, str(Path(__file__).parent))
