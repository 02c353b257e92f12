"""Detection: rules over the playback events that flag account sharing and abuse.

* :mod:`ingestor.detection.rules`: the pure rules engine (events in stream order, alerts out,
  event time only);
* :mod:`ingestor.detection.geo`: where an address is (a MaxMind-format database, local
  addresses are never a place), great-circle distances, VPN ranges;
* :mod:`ingestor.detection.config`: the settings (defaults, ``DETECTION_CONFIG`` file,
  environment);
* :mod:`ingestor.detection.detector`: the runner, a durable consumer that publishes the
  alerts to the stream, from where the projection writes ``detection_alerts``.
"""

from ingestor.detection.config import LOCATION_RULES, RULES, DetectionConfig
from ingestor.detection.detector import DETECTOR, Detector
from ingestor.detection.geo import GeoIP, Place, VpnRanges
from ingestor.detection.rules import Engine

__all__ = [
    "DETECTOR",
    "LOCATION_RULES",
    "RULES",
    "DetectionConfig",
    "Detector",
    "Engine",
    "GeoIP",
    "Place",
    "VpnRanges",
]
