"""Text-prompted video: ``track(video, prompt)`` and its outputs (annotated video, JSON lines,
MOT text), with tracking metrics computed by TrackEval."""

from .frames import VideoSource, open_video
from .tracking import TRACKERS, track
from .writers import TrackWriter

__all__ = ["TRACKERS", "TrackWriter", "VideoSource", "open_video", "track"]
