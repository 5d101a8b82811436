"""pixdex: serverless image processing and image search.

All logic lives in this package; the Lambda handlers in functions/ are thin shells over it.
"""

__version__ = "0.1.0"
