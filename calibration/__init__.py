"""Camera calibration and pixel-to-base projection (import name magma_calibration).

Modules: ``projection`` (pure-numpy pixel/depth <-> base frame, distortion, robust depth, ray-plane),
``boards`` (board specs and detection), ``intrinsics``, ``handeye``, ``camera_info`` and ``extrinsics``
(the YAML files), ``samples`` (hand-eye sample folders), ``check`` (reprojection reports) and
``commands`` (``magma calibrate ...``). See calibration/README.md.
"""
