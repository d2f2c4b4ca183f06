"""Episode recording without ROS: the episode events, the chunked MCAP bag writer and the episode folder.

The recorder node (magma_ros.nodes.recorder) only wires ROS subscriptions to these pieces, so they can be
tested and reused without DDS. The folder layout and episode.json are read back by magma_core.data.bag_io
(see docs/recording.md).
"""
from magma_ros.recording.episode_writer import DiskSpaceError, EpisodeWriter, free_mb
from magma_ros.recording.events import EpisodeEvent, parse_episode_event

__all__ = ["DiskSpaceError", "EpisodeEvent", "EpisodeWriter", "free_mb", "parse_episode_event"]
