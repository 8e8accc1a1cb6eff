"""lmiflow: size, deploy, benchmark and promote open LLMs on SageMaker LMI endpoints."""

__version__ = "0.1.0"
