"""Camera calibration and pixel-to-base projection (import name magma_calibration)."""
