"""Operating Headwater: health, readiness and (later) the workspace API and web app."""
