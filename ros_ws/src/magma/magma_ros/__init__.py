"""Thin ROS 2 nodes around magma_core (ROS package magma)."""
