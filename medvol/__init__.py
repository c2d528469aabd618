"""medvol: memory-efficient 3D generative models of medical volumes.

Importing the package stays light: heavy optional libraries are imported where they are used.
"""

__version__ = "0.1.0"
