"""relaymail: a mail transfer agent with explicit, per-domain TLS policy.

The public API is what this module names in `__all__`:

    from relaymail import DeliveryEngine, Envelope, canonical_data, load_config

Each name is imported on first use (PEP 562): `import relaymail.config`, the
path `sendmail` takes from cron, must not pay for the delivery engine, asyncio
or aiosmtpd just because Python imports this package first.
"""

from __future__ import annotations

# Not even typing at run time: it loads re and enum, a third of sendmail's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import Config, load_config
    from .delivery import DeliveryEngine, RecipientResult, Status, deliver
    from .errors import (
        AddressError,
        ConfigError,
        ConnectFailed,
        ConnectionLost,
        ConnectTimeout,
        HeaderValueError,
        ListenFailed,
        LocalProtocolError,
        MessageInputError,
        MessageTooLarge,
        QueueFull,
        QueueUnavailable,
        QueueUnusable,
        RelaymailError,
        RemoteProtocolError,
        ReplyTimeout,
        SessionError,
        UnsafeCommandError,
    )
    from .message import Envelope, canonical_data
    from .queue_problem import QueueProblem

__all__ = [
    "AddressError",
    "Config",
    "ConfigError",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionLost",
    "DeliveryEngine",
    "Envelope",
    "HeaderValueError",
    "ListenFailed",
    "LocalProtocolError",
    "MessageInputError",
    "MessageTooLarge",
    "QueueFull",
    "QueueProblem",
    "QueueUnavailable",
    "QueueUnusable",
    "RecipientResult",
    "RelaymailError",
    "RemoteProtocolError",
    "ReplyTimeout",
    "SessionError",
    "Status",
    "UnsafeCommandError",
    "canonical_data",
    "deliver",
    "load_config",
]

# Where each public name lives; a name not listed here comes from the errors module.
_HOMES = {
    "Config": ".config",
    "load_config": ".config",
    "DeliveryEngine": ".delivery",
    "RecipientResult": ".delivery",
    "Status": ".delivery",
    "deliver": ".delivery",
    "Envelope": ".message",
    "canonical_data": ".message",
    "QueueProblem": ".queue_problem",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HOMES.get(name, ".errors"), __name__), name)
    globals()[name] = value  # the next access is an ordinary lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
