"""sendmail's settings kept beside the configuration: used only while they hold the file's
exact content and come from root or the file's owner; otherwise the file is parsed."""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relaymail.config_file import parse_toml
from relaymail.sendmail_settings import SubmitSettings, settings_of, submit_settings, write_cache

CONFIG = '[queue]\ndirectory = "/var/spool/one"\n[local]\ndomain = "example.org"\n'
NOBODY = pwd.getpwnam("nobody")


def _config(tmp_path: Path, text: str = CONFIG) -> tuple[Path, Path]:
    file = tmp_path / "relaymail.toml"
    file.write_text(text)
    return file, tmp_path / "relaymail.toml.cache"


def _forge(cache: Path) -> None:
    """Change the kept queue directory, so a read of the copy shows in the result."""
    cache.write_bytes(cache.read_bytes().replace(b"/var/spool/one", b"/var/spool/two", 1))


def test_the_kept_settings_are_what_parsing_gives_and_are_used(tmp_path: Path) -> None:
    file, cache = _config(tmp_path, CONFIG + '[[listener]]\nmax_message_size = "1M"\n')
    assert write_cache(str(file)) is True
    assert cache.stat().st_mode & 0o777 == 0o644
    parsed = settings_of(parse_toml(file.read_bytes(), str(file)))
    assert submit_settings(str(file)) == parsed == SubmitSettings(
        "/var/spool/one", "example.org", 1 << 20
    )
    _forge(cache)
    assert submit_settings(str(file)).queue_directory == "/var/spool/two"


def test_an_unset_local_domain_is_the_hosts_fqdn_at_run_time(tmp_path: Path) -> None:
    file, _ = _config(tmp_path, '[queue]\ndirectory = "relative/queue"\n')
    assert write_cache(str(file)) is True
    settings = submit_settings(str(file))
    assert (settings.queue_directory, settings.domain) == ("relative/queue", None)
    assert settings.local_domain == socket.getfqdn()


def _same_size_same_mtime(file: Path, cache: Path) -> None:
    before = file.stat()
    file.write_text(CONFIG.replace("/var/spool/one", "/var/spool/new"))
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))


UNUSABLE: dict[str, Callable[[Path, Path], None]] = {
    "config changed, same size and mtime": _same_size_same_mtime,
    "copy owned by another user": lambda _, c: os.chown(c, NOBODY.pw_uid, NOBODY.pw_gid),
    "copy group-writable": lambda _, c: c.chmod(0o664),
    "copy world-writable": lambda _, c: c.chmod(0o646),
    "copy torn": lambda _, c: c.write_bytes(c.read_bytes()[:-5]),
    "copy of another format": lambda _, c: c.write_bytes(
        c.read_bytes().replace(b" 1\n", b" 2\n", 1)
    ),
    "copy with more after the content": lambda _, c: c.write_bytes(c.read_bytes() + b"\n"),
    "copy with its fields out of order": lambda _, c: c.write_bytes(
        c.read_bytes().replace(b"queue.directory", b"queue.direktory", 1)
    ),
    "copy that is a directory": lambda _, c: (c.unlink(), c.mkdir()),
}


@pytest.mark.parametrize("spoil", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_a_copy_not_beyond_doubt_is_ignored(
    tmp_path: Path, spoil: Callable[[Path, Path], None]
) -> None:
    file, cache = _config(tmp_path)
    assert write_cache(str(file)) is True
    _forge(cache)
    spoil(file, cache)
    assert submit_settings(str(file)) == settings_of(parse_toml(file.read_bytes(), str(file)))


def test_the_file_owners_copy_is_trusted(tmp_path: Path) -> None:
    file, cache = _config(tmp_path)
    assert write_cache(str(file)) is True
    _forge(cache)
    os.chown(file, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(cache, NOBODY.pw_uid, NOBODY.pw_gid)
    assert submit_settings(str(file)).queue_directory == "/var/spool/two"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory outside pytest's own (0700), so that nobody can reach it."""
    path = Path(tempfile.mkdtemp(prefix="relaymail-settings-"))
    yield path
    shutil.rmtree(path)


def _write_cache_as_nobody(file: Path) -> str:
    probe = f"from relaymail.sendmail_settings import write_cache as w; print(w({str(file)!r}))"
    done = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
         sys.executable, "-c", probe],
        capture_output=True, check=True,
    )  # fmt: skip
    return done.stdout.decode().strip()


def test_nothing_is_written_that_sendmail_would_not_trust(shared: Path) -> None:
    shared.chmod(0o777)  # nobody may write here: only the trust rule stops it
    file, cache = _config(shared)
    assert _write_cache_as_nobody(file) == "False"  # root's file: nobody's copy is not used
    assert not cache.exists()
    os.chown(file, NOBODY.pw_uid, NOBODY.pw_gid)
    assert _write_cache_as_nobody(file) == "True"  # nobody's own file: so is the copy
    assert cache.stat().st_uid == NOBODY.pw_uid
    assert submit_settings(str(file)) == SubmitSettings("/var/spool/one", "example.org", 35 << 20)


def test_nothing_is_written_where_the_owner_may_not_write(shared: Path) -> None:
    shared.chmod(0o755)
    file, _ = _config(shared)
    os.chown(file, NOBODY.pw_uid, NOBODY.pw_gid)
    assert _write_cache_as_nobody(file) == "False"
    assert sorted(p.name for p in shared.iterdir()) == ["relaymail.toml"]


@pytest.mark.parametrize(
    "text", ['[local]\ndomain = "bad domain"\n', "[queue\n", "[[listener]]\nmax_message_size = 0\n"]
)
def test_no_copy_of_a_mistake_in_what_sendmail_reads(tmp_path: Path, text: str) -> None:
    file, cache = _config(tmp_path, text)
    assert write_cache(str(file)) is False
    assert not cache.exists()
