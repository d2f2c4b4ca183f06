"""Robot episode data: the in-memory episode record, dataset formats (LeRobot v3, RLDS) and samples."""
