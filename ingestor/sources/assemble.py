"""Build the configured source adapters around one sink, for ``ingestor run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ingestor.sink import Sink
from ingestor.sources.base import Source, SourceHealth, WebhookSource
from ingestor.sources.config import SourcesConfig
from ingestor.sources.jellyfin.tracker import PlaybackTracker
from ingestor.sources.jellyfin.webhook import JellyfinWebhook
from ingestor.sources.jellyfin.websocket import MediaServerSocket
from ingestor.sources.plex.poll import PlexSessionsPoller
from ingestor.sources.plex.webhook import PlexWebhook
from ingestor.sources.tautulli.sync import TautulliSync


@dataclass
class Sources:
    """The adapters of one ingestor: those that run, and those that receive HTTP."""

    runners: list[Source] = field(default_factory=list)
    webhooks: list[WebhookSource] = field(default_factory=list)

    @property
    def health(self) -> list[SourceHealth]:
        return [s.health for s in self.webhooks] + [s.health for s in self.runners]

    def server_info_learned(self, server_id: str, owner_id: str | None) -> None:
        """A Tautulli adapter learned the Plex owner's real id: teach the Plex adapters."""
        if owner_id is None:
            return
        for adapter in [*self.webhooks, *self.runners]:
            setter = getattr(adapter, "set_owner_id", None)
            if setter is not None:
                setter(owner_id)


def build_sources(config: SourcesConfig, sink: Sink, data_dir: Path) -> Sources:
    """One adapter per configured source; state files live under ``data_dir/sources``."""
    state = data_dir / "sources"
    sources = Sources()
    if config.plex_webhook is not None:
        sources.webhooks.append(
            PlexWebhook(
                sink,
                state / "plex-webhook.json",
                token=config.plex_webhook.token,
                owner_id=config.plex_webhook.owner_id,
            )
        )
    for plex in config.plex_polls:
        sources.runners.append(
            PlexSessionsPoller(
                sink,
                url=plex.url,
                token=plex.token,
                state_path=state / f"{plex.name}-poll.json",
                interval=plex.interval,
                owner_id=plex.owner_id,
                name=f"plex-poll:{plex.name}",
            )
        )
    for tautulli in config.tautulli:
        sources.runners.append(
            TautulliSync.from_config(
                tautulli, data_dir=data_dir, sink=sink, on_server_info=sources.server_info_learned
            )
        )
    # One tracker per source name, shared by every Jellyfin (or Emby) server and the
    # Jellyfin webhook: a playback seen by the WebSocket and the webhook stays one playback.
    trackers: dict[str, PlaybackTracker] = {}

    def tracker(flavour: str) -> PlaybackTracker:
        if flavour not in trackers:
            trackers[flavour] = PlaybackTracker(flavour, state / f"{flavour}-sessions.json", sink)
        return trackers[flavour]

    for server in config.media_servers:
        sources.runners.append(
            MediaServerSocket(
                server.flavour,
                server.url,
                server.api_key,
                tracker=tracker(server.flavour),
                name=server.name,
            )
        )
    if config.jellyfin_webhook is not None:
        sources.webhooks.append(
            JellyfinWebhook(tracker("jellyfin"), token=config.jellyfin_webhook.token)
        )
    return sources
