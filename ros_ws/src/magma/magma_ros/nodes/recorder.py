"""Recorder node: one MCAP bag per episode of the configured topics, opened and closed by magma/episode_event.

Each topic is subscribed raw (the CDR bytes as received go to the bag, never deserialised) once a
publisher appears, with its type from the graph (or pinned as "name:type") and a QoS that matches the
publishers: best effort for camera data and for any best-effort publisher, transient local when every
publisher is latched (the newest latched message is then written at the start of each episode, so an
instruction published before the episode is in its bag).

Received messages are written every flush_period_s as one batch, after a free-space check: below
min_free_mb the episode is closed cleanly as 'aborted' with the reason in episode.json, an error is
logged and the node keeps running. Chunks close at chunk_size_kb or after chunk_max_s and are flushed,
so a recorder killed with -9 loses at most the open chunk. Layout: docs/recording.md.
Never imports torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import String

from magma_core.errors import InvalidInputError
from magma_ros import qos
from magma_ros.nodes import ConfigurationError, Param, ThrottledLog, declare_parameters, main_entry, parameter_values, run_node
from magma_ros.recording import DiskSpaceError, EpisodeEvent, EpisodeWriter, parse_episode_event

EVENT_TOPIC = "magma/episode_event"
# Reliable + transient local: events published before the recorder matched are still delivered.
EPISODE_EVENT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Camera data is recorded best effort whatever the publisher offers: a reliable subscriber would slow it down.
SENSOR_TYPES = frozenset({"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/CameraInfo",
                          "sensor_msgs/msg/PointCloud2"})
# A start event stamped this long before the recorder came up is a replay of an episode it missed the
# beginning of: recording it would make a partial episode.
LATE_START_GRACE_NS = 2_000_000_000

DEFAULT_TOPICS = ["camera/image_raw", "camera/depth/image_raw", "camera/camera_info", "joint_states", "magma/ee_pose",
                  "magma/target_pose", "magma/gripper_command", "magma/teleop/twist", "magma/teleop/pose",
                  "magma/teleop/gripper", "magma/instruction", "sim/success"]

PARAMETERS = (
    Param("record_dir", "episodes", "Folder receiving one sub-folder per episode (<episode_id>/episode.json + bag/)."),
    Param("topics", DEFAULT_TOPICS, "Topics to record: 'name' (type found on the graph) or 'name:pkg/msg/Type'."),
    Param("robot", "panda", "Robot name written into each episode's metadata."),
    Param("camera_info_topic", "camera/camera_info", "camera_info captured into the metadata (calibration.camera_info); empty: none."),
    Param("extrinsics_path", "", "Camera extrinsics YAML whose text goes into the metadata (calibration.extrinsics_yaml); empty: none."),
    Param("min_free_mb", 1024.0, "Disk guard: below this much free space (MiB) the episode is closed as 'aborted' (settable at run time)."),
    Param("chunk_size_kb", 256, "MCAP chunk size in KiB (1..1024): a kill -9 loses at most the open chunk."),
    Param("chunk_max_s", 1.0, "A chunk is also closed and flushed when its first message is this old, seconds."),
    Param("flush_period_s", 0.2, "How often received messages are written to the bag (each batch after a disk check)."),
)


class RecorderNode(Node):
    """Writes the configured topics of each episode into `<record_dir>/<episode_id>/`."""

    def __init__(self) -> None:
        super().__init__("recorder")
        self.log = ThrottledLog(self.get_logger())
        declare_parameters(self, PARAMETERS)
        self.cfg = parameter_values(self, PARAMETERS)
        self._check_config()
        self.record_dir = Path(self.cfg["record_dir"]).expanduser()
        self.wanted = self._topic_specs(self.cfg["topics"])  # resolved name -> pinned type or None
        self.subscribed: dict[str, str] = {}  # resolved name -> type
        self._unrecordable: set[str] = set()
        self._latched: dict[str, bytes] = {}  # newest message of each transient-local topic
        self._pending: list[tuple[str, int, bytes]] = []
        self._pending_bytes = 0
        self._started_ns = self._now_ns()
        self._seen_starts: set[str] = set()
        self._camera_info: dict | None = None
        self.episode: EpisodeWriter | None = None
        self.episodes_recorded = 0

        from rosbags.typesys import Stores, get_typestore

        self._typestore = get_typestore(Stores.ROS2_KILTED)
        self.create_subscription(String, EVENT_TOPIC, self._on_event, EPISODE_EVENT_QOS)
        if self.cfg["camera_info_topic"]:
            self.create_subscription(CameraInfo, self.cfg["camera_info_topic"], self._on_camera_info, qos.SENSOR)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(float(self.cfg["flush_period_s"]), self._flush)
        self._discovery = self.create_timer(0.5, self._discover)
        self._discover()
        self.get_logger().info(f"recorder: {len(self.wanted)} topics into {self.record_dir} (episodes start and stop "
                               f"on {self.resolve_topic_name(EVENT_TOPIC)}), disk guard {self.cfg['min_free_mb']:g} MiB")

    def _check_config(self) -> None:
        cfg = self.cfg
        if not str(cfg["record_dir"]).strip():
            raise ConfigurationError("record_dir must not be empty")
        if not cfg["topics"]:
            raise ConfigurationError("topics must name at least one topic")
        if not 1 <= int(cfg["chunk_size_kb"]) <= 1024:
            raise ConfigurationError(f"chunk_size_kb must be in 1..1024 (rosbags closes chunks at 1 MiB), "
                                     f"got {cfg['chunk_size_kb']}")
        for key in ("chunk_max_s", "flush_period_s"):
            if not float(cfg[key]) > 0:
                raise ConfigurationError(f"{key} must be more than 0, got {cfg[key]}")
        if not float(cfg["min_free_mb"]) >= 0:
            raise ConfigurationError(f"min_free_mb must be 0 or more, got {cfg['min_free_mb']}")

    def _on_set_parameters(self, params) -> SetParametersResult:
        """min_free_mb may change at run time (it applies to the open episode too); the rest only at start."""
        for p in params:
            if p.name == "min_free_mb":
                if not isinstance(p.value, (int, float)) or p.value < 0:
                    return SetParametersResult(successful=False, reason=f"min_free_mb must be a number >= 0, got {p.value!r}")
            elif p.name in self.cfg:
                return SetParametersResult(successful=False, reason=f"{p.name} is read at start only; restart the recorder")
        for p in params:
            if p.name == "min_free_mb":
                self.cfg["min_free_mb"] = float(p.value)
                if self.episode is not None:
                    self.episode.min_free_mb = float(p.value)
        return SetParametersResult(successful=True)

    def _topic_specs(self, specs: Sequence[str]) -> dict[str, str | None]:
        wanted: dict[str, str | None] = {}
        for spec in specs:
            name, _, msgtype = str(spec).partition(":")
            msgtype = msgtype.strip() or None
            if msgtype is not None and msgtype.count("/") != 2:
                raise ConfigurationError(f"topic {spec!r}: the type must look like pkg/msg/Type")
            try:
                wanted[self.resolve_topic_name(name.strip())] = msgtype
            except Exception as exc:  # rclpy raises its own InvalidTopicNameException
                raise ConfigurationError(f"topic {spec!r} is not a valid topic name: {exc}") from exc
        return wanted

    # -- subscriptions ---------------------------------------------------------------------------------
    def _discover(self) -> None:
        """Subscribe to each wanted topic once it has a publisher (its type and QoS come from the graph)."""
        waiting = [t for t in self.wanted if t not in self.subscribed and t not in self._unrecordable]
        if not waiting:
            self._discovery.cancel()
            return
        graph = dict(self.get_topic_names_and_types())
        for topic in waiting:
            types = graph.get(topic)
            if not types:
                continue
            msgtype = self.wanted[topic] or types[0]
            if self.wanted[topic] and self.wanted[topic] not in types:
                self.log.error(f"{topic}: pinned type {self.wanted[topic]} but publishers offer {types}; not recorded",
                               period=30.0)
                continue
            if len(types) > 1 and not self.wanted[topic]:
                self.log.warning(f"{topic} has several types {types}; recording {msgtype} (pin one with name:type)")
            self._subscribe(topic, msgtype)

    def _subscribe(self, topic: str, msgtype: str) -> None:
        if msgtype not in self._typestore.fielddefs:
            self.get_logger().error(f"{topic}: type {msgtype} is not in the ROS 2 Kilted typestore; not recorded")
            self._unrecordable.add(topic)
            return
        try:
            pkg, _, name = msgtype.split("/")
            msg_class = getattr(importlib.import_module(f"{pkg}.msg"), name)
        except (ImportError, AttributeError, ValueError):
            self.get_logger().error(f"{topic}: message package for {msgtype} is not installed; not recorded")
            self._unrecordable.add(topic)
            return
        profile = self._qos_for(topic, msgtype)
        latched = profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
        self.create_subscription(msg_class, topic, lambda data, t=topic, keep=latched: self._on_raw(t, data, keep),
                                 profile, raw=True)
        self.subscribed[topic] = msgtype
        if self.episode is not None:
            self._add_to_episode(topic, msgtype)
        kind = "best effort" if profile.reliability == ReliabilityPolicy.BEST_EFFORT else "reliable"
        self.get_logger().info(f"recording {topic} ({msgtype}, {kind}{', latched' if latched else ''})")

    def _qos_for(self, topic: str, msgtype: str) -> QoSProfile:
        """A subscription profile every current publisher matches."""
        offered = [info.qos_profile for info in self.get_publishers_info_by_topic(topic)]
        best_effort = msgtype in SENSOR_TYPES or any(q.reliability == ReliabilityPolicy.BEST_EFFORT for q in offered)
        latched = bool(offered) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10 if best_effort else 100,
                          reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)

    def _on_raw(self, topic: str, data: bytes, latched: bool) -> None:
        if latched:
            self._latched[topic] = data
        if self.episode is None:
            return
        self._pending.append((topic, self._now_ns(), data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= int(self.cfg["chunk_size_kb"]) * 1024:
            self._flush()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = camera_info_to_dict(msg)

    # -- episodes --------------------------------------------------------------------------------------
    def _on_event(self, msg: String) -> None:
        try:
            event = parse_episode_event(msg.data)
        except InvalidInputError as exc:
            self.log.error(f"episode event ignored: {exc}")
            return
        if event.event == "start":
            self._start(event)
        else:
            self._stop(event)

    def _start(self, event: EpisodeEvent) -> None:
        if event.episode_id in self._seen_starts:
            return  # the same start again (a latched replay): already handled
        self._seen_starts.add(event.episode_id)
        if event.stamp_ns and event.stamp_ns < self._started_ns - LATE_START_GRACE_NS:
            self.get_logger().info(f"not recording episode {event.episode_id}: it started before this recorder "
                                   "(the bag would miss its beginning)")
            return
        if self.episode is not None:
            self._flush()
        if self.episode is not None:
            self._finish(None, "aborted", f"episode {event.episode_id} started before {self.episode.episode_id} stopped")
        meta = {"episode_id": event.episode_id, "instruction": event.instruction, "robot": self.cfg["robot"],
                "start_ns": event.stamp_ns or self._now_ns(), "calibration": self._calibration()}
        try:
            self.episode = EpisodeWriter(self.record_dir, meta, float(self.cfg["min_free_mb"]),
                                         int(self.cfg["chunk_size_kb"]) * 1024, float(self.cfg["chunk_max_s"]))
        except (DiskSpaceError, InvalidInputError, OSError) as exc:
            self.get_logger().error(f"not recording episode {event.episode_id}: {exc}")
            return
        for topic, msgtype in self.subscribed.items():
            self._add_to_episode(topic, msgtype)
        now = self._now_ns()
        for topic, data in self._latched.items():
            self._pending.append((topic, now, data))
        self.get_logger().info(f"recording episode {event.episode_id} into {self.episode.folder} "
                               f"({len(self.subscribed)} of {len(self.wanted)} topics so far)")

    def _add_to_episode(self, topic: str, msgtype: str) -> None:
        try:
            self.episode.add_topic(topic, msgtype)
        except InvalidInputError as exc:
            self.get_logger().error(str(exc))

    def _stop(self, event: EpisodeEvent) -> None:
        if self.episode is None or self.episode.episode_id != event.episode_id:
            if event.episode_id not in self._seen_starts:
                self.get_logger().info(f"stop of episode {event.episode_id} ignored: it is not being recorded")
            return
        self._flush()
        if self.episode is not None:  # the flush may have aborted it
            self._finish(event.stamp_ns or None, event.outcome, None)

    def _finish(self, stop_ns: int | None, outcome: str | None, reason: str | None, failure: bool = False) -> None:
        """Close the open episode; `failure` (disk guard, write error) logs an error, other aborts a warning."""
        episode, self.episode = self.episode, None
        self._pending.clear()
        self._pending_bytes = 0
        if episode.meta["calibration"].get("camera_info") is None and self._camera_info is not None:
            episode.meta["calibration"]["camera_info"] = self._camera_info
        try:
            meta = episode.close(outcome, reason, stop_ns)
        except OSError as exc:  # episode.json could not be rewritten (disk full...): the bag stays recoverable
            self.get_logger().error(f"episode {episode.episode_id}: could not finish its metadata: {exc}")
            return
        self.episodes_recorded += 1
        counts = ", ".join(f"{t} {n}" for t, n in sorted(meta["message_counts"].items()))
        text = (f"episode {episode.episode_id} closed: outcome {outcome}, {sum(meta['message_counts'].values())} "
                f"messages ({counts or 'none'}) in {episode.folder}")
        if failure or not meta["complete"]:
            self.get_logger().error(f"{text}; aborted: {meta['reason']}")
        elif reason:
            self.get_logger().warning(f"{text}; aborted: {reason}")
        else:
            self.get_logger().info(text)

    def _flush(self) -> None:
        """Write the received messages as one batch (after the disk check) and close an old chunk."""
        if self.episode is None:
            return
        batch, self._pending = self._pending, []
        self._pending_bytes = 0
        try:
            self.episode.write_batch(batch)
            self.episode.close_chunk_if_old()
        except DiskSpaceError as exc:
            self._finish(None, "aborted", f"disk guard: {exc}", failure=True)
        except OSError as exc:
            self._finish(None, "aborted", f"write failed: {exc}", failure=True)

    def _calibration(self) -> dict:
        extrinsics = None
        path = self.cfg["extrinsics_path"]
        if path:
            try:
                extrinsics = Path(path).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self.log.warning(f"extrinsics not recorded: cannot read {path}: {exc}")
        return {"camera_info": self._camera_info, "extrinsics_yaml": extrinsics}

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def close(self) -> None:
        """Node shutdown: an episode still open is closed cleanly as aborted."""
        if self.episode is not None:
            self._flush()
        if self.episode is not None:
            self._finish(None, "aborted", "the recorder shut down during the episode")


def camera_info_to_dict(msg: CameraInfo) -> dict:
    """The calibration fields of a CameraInfo as plain JSON values."""
    return {"frame_id": msg.header.frame_id, "width": int(msg.width), "height": int(msg.height),
            "distortion_model": msg.distortion_model, "d": [float(x) for x in msg.d],
            "k": [float(x) for x in msg.k], "r": [float(x) for x in msg.r], "p": [float(x) for x in msg.p],
            "binning_x": int(msg.binning_x), "binning_y": int(msg.binning_y),
            "roi": {"x_offset": int(msg.roi.x_offset), "y_offset": int(msg.roi.y_offset), "height": int(msg.roi.height),
                    "width": int(msg.roi.width), "do_rectify": bool(msg.roi.do_rectify)}}


def main(args: Sequence[str] | None = None) -> int:
    return run_node(RecorderNode, args, PARAMETERS, "magma_ros.nodes.recorder")


if __name__ == "__main__":
    main_entry(main)
