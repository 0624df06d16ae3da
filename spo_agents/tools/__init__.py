"""Built-in tools for environments: a safe exact calculator (calculator.py)."""

from spo_agents.tools.calculator import CALCULATOR_FUNCTIONS, CalculatorError, evaluate, format_value

__all__ = ["CALCULATOR_FUNCTIONS", "CalculatorError", "evaluate", "format_value"]
