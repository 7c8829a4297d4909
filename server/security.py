"""What the start-up log says about a configuration's protections, and what it risks when exposed."""

from __future__ import annotations

from predserve.server.settings import ServerConfig


def security_summary(config: ServerConfig) -> str:
    """Which protections are on, for the start-up log; says whether a secret is set, never what it is."""

    def state(value: object) -> str:
        return "set" if value is not None else "not set"

    admin_note = (
        " (model-changing calls (Train, IngestHistory, Promote, ImportModel, GarbageCollect) open on loopback)"
        if config.admin_token is None and config.binds_loopback
        else ""
    )
    tls = "off" if config.tls_cert is None else ("mutual" if config.tls_client_ca else "on")
    return (
        f"admin token {state(config.admin_token)}{admin_note}, "
        f"predict token {state(config.predict_token)}{'' if config.predict_token else ' (Predict open)'}, "
        f"TLS {tls}, artifact HMAC key {state(config.artifact_hmac_key)}"
    )


def security_warnings(config: ServerConfig) -> list[str]:
    """What an exposed server risks with this configuration; nothing on a loopback address."""
    if config.binds_loopback:
        return []
    warnings = []
    if config.tls_cert is None:
        warnings.append(
            f"serving on {config.host} without TLS: requests, predictions and bearer tokens cross the network "
            "in clear text, and anyone on the path can read or change them (set --tls-cert and --tls-key)"
        )
    if config.admin_token is None:
        warnings.append(
            f"serving on {config.host} without an admin token: model-changing calls (Train, IngestHistory, "
            "Promote, ImportModel, GarbageCollect) are allowed without a token only on a loopback address, "
            "so here they are refused to every caller "
            "(set PREDSERVE_ADMIN_TOKEN or PREDSERVE_ADMIN_TOKEN_FILE)"
        )
    if config.predict_token is None and config.tls_client_ca is None:
        warnings.append(
            f"serving on {config.host} without a predict token or client certificates: Predict and the model "
            "listings answer anyone who can reach the port (set PREDSERVE_PREDICT_TOKEN or --tls-client-ca)"
        )
    return warnings
