"""``transcribe``: speech recognition with Whisper: the task (`TranscribeTask`), its pipeline `SpeechRecognizer`
(`recognizer`), and Whisper's own decoding rules: the timestamp rule the decoding engine applies as the decode's
task rule, and the merging of overlapping windows (`timestamps`)."""

from toolkit.tasks.transcribe.recognizer import (
    RealTimeFactor,
    Segment,
    SpeechRecognizer,
    TranscribeTask,
    Transcript,
    real_time_factor,
)
from toolkit.tasks.transcribe.timestamps import TimestampRule, WindowOutput, merge_windows

__all__ = [
    "PIPELINE",
    "TASK",
    "RealTimeFactor",
    "Segment",
    "SpeechRecognizer",
    "TimestampRule",
    "TranscribeTask",
    "Transcript",
    "WindowOutput",
    "merge_windows",
    "real_time_factor",
]

TASK = TranscribeTask
PIPELINE = SpeechRecognizer
