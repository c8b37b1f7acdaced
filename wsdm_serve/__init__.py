"""wsdm: a pairwise LLM judge that predicts which of two chatbot responses a user prefers."""

__version__ = "0.1.0"
