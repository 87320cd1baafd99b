"""stillwatch: distil large language models into small ones, and catch anyone distilling yours."""

__version__ = "0.1.0"
