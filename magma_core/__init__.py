"""magma_core: Set-of-Mark / Trace-of-Mark, codecs, prompts, the model and the Policy interface.

Never imports rclpy or magma_sim.
"""
__version__ = "0.1.0"
