"""Filesystem operations inside a ztee sandbox, as the sandbox user, driven over JSON lines.

Why this exists: the E2B SDK's `sandbox.files` talks to envd, E2B's in-sandbox daemon, for
stat, list, mkdir, move, remove and directory watches. ztee's gateway serves that API and has this
program do the work inside the sandbox, run as the unprivileged sandbox user with the image's own
python3 (standard library only), so the kernel checks every operation against that user exactly as
it checks the user's own code; the gateway needs no filesystem logic of its own in the guest.

Protocol (the host runs `python3 -u fs.py`): the first line is {"ready": true}; then each request
line gets exactly one answer line, {"ok": RESULT} or {"error": {"kind": KIND, "message": str}},
where KIND is one of not_found, already_exists, permission_denied, invalid_argument,
not_a_directory, is_a_directory, io. Bad input is answered, never fatal; EOF ends with status 0.
Paths are absolute or relative to the user's home; a leading "~" is the home too, as in envd.

Requests and results:
  {"op": "stat", "path": P}                         EntryInfo of P itself (a symlink is a symlink)
  {"op": "list", "path": P, "depth": D}             {"entries": [EntryInfo]}, D >= 1 levels deep
                                                    (default 1), sorted by path; symlinked
                                                    directories are listed, never entered
  {"op": "mkdir", "path": P}                        {"created": false if P already was a directory}
  {"op": "move", "source": S, "destination": D}     EntryInfo of D
  {"op": "remove", "path": P}                       {} (directories recursively, links themselves)
  {"op": "watch_start", "path": P, "recursive": B}  {"watcher": ID}
  {"op": "watch_poll", "watcher": ID}               {"events": [{"name": relative path, "type": T}]}
  {"op": "watch_stop", "watcher": ID}               {}
EntryInfo: name, type (file, dir, symlink, other), path (absolute, normalized), size, mode
(permission bits), permissions ("-rw-r--r--"), owner, group (names, or ids where unnamed),
modified_time (RFC 3339 UTC with nanoseconds), symlink_target (str or null).
"""

import ctypes
import datetime
import errno
import functools
import grp
import json
import os
import re
import pwd
import shutil
import stat
import struct
import sys

ERRNO_KINDS = {
    errno.ENOENT: "not_found",
    errno.EEXIST: "already_exists",
    errno.ENOTEMPTY: "already_exists",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.ENOTDIR: "not_a_directory",
    errno.EISDIR: "is_a_directory",
    errno.EINVAL: "invalid_argument",
    errno.ENAMETOOLONG: "invalid_argument",
    errno.ELOOP: "invalid_argument",
}

# inotify(7) event bits, and the watch event type each one is reported as.
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
# As envd reports them (fsnotify's mapping): a name moved away is a rename, a name moved in is
# created, so a file that appears by rename (as every upload does) is seen created.
EVENT_TYPES = (
    (IN_CREATE | IN_MOVED_TO, "create"),
    (IN_MODIFY | IN_CLOSE_WRITE, "write"),
    (IN_DELETE, "remove"),
    (IN_MOVED_FROM, "rename"),
    (IN_ATTRIB, "chmod"),
)
# The agent writes an upload to `.NAME.ztee-upload-PID` beside its target and renames it into
# place: watchers see the file created under its name, not the staging copy.
UPLOAD_STAGING = re.compile(r"\..+\.ztee-upload-[0-9]+")
WATCH_MASK = IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
WATCH_MASK |= IN_ATTRIB | IN_ONLYDIR
# struct inotify_event: int wd; uint32_t mask, cookie, len; char name[len] (NUL-padded).
INOTIFY_EVENT = struct.Struct("iIII")

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class Failure(Exception):
    """An answer of kind `kind` (see ERRNO_KINDS) for the request at hand."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


class Server:
    """Answers requests; owns the watchers they start."""

    def __init__(self):
        self._home = os.path.expanduser("~")
        self._watchers = {}
        self._next_watcher = 1
        self._inotify = None

    def answer(self, line):
        """The answer object to one request line."""
        try:
            try:
                request = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise Failure(
                    "invalid_argument", f"a request is one JSON object per line: {exc}"
                ) from None
            if not isinstance(request, dict):
                raise Failure("invalid_argument", "a request is a JSON object")
            handler = OPS.get(request.get("op"))
            if handler is None:
                raise Failure("invalid_argument", f"unknown op {request.get('op')!r}")
            return {"ok": handler(self, request)}
        except Failure as exc:
            return {"error": {"kind": exc.kind, "message": str(exc)}}
        except OSError as exc:
            return {"error": {"kind": ERRNO_KINDS.get(exc.errno, "io"), "message": _message(exc)}}
        except Exception as exc:  # a bug here must not end the program: answer it
            return {"error": {"kind": "io", "message": f"{type(exc).__name__}: {exc}"}}

    def stat(self, request):
        return entry_info(self._path(request, "path"))

    def list(self, request):
        root = self._path(request, "path")
        depth = request.get("depth", 1)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise Failure("invalid_argument", '"depth" must be an integer >= 1')
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise Failure("not_a_directory", f"{_text(root)}: not a directory")
        entries = []
        pending = [(root, depth)]
        while pending:
            directory, levels = pending.pop()
            try:
                with os.scandir(directory) as scan:
                    children = list(scan)
            except OSError:
                if directory == root:
                    raise
                continue  # an unreadable subdirectory is listed, not entered
            for child in children:
                try:
                    info = entry_info(child.path, child.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue  # removed meanwhile
                entries.append(info)
                if levels > 1 and info["type"] == "dir":
                    pending.append((child.path, levels - 1))
        entries.sort(key=lambda entry: entry["path"])
        return {"entries": entries}

    def mkdir(self, request):
        path = self._path(request, "path")
        try:
            os.makedirs(path)
        except FileExistsError:
            if os.path.isdir(path):
                return {"created": False}
            raise Failure("already_exists", f"{_text(path)}: exists and is not a directory")
        return {"created": True}

    def move(self, request):
        source = self._path(request, "source")
        destination = self._path(request, "destination")
        os.rename(source, destination)
        return entry_info(destination)

    def remove(self, request):
        path = self._path(request, "path")
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)  # removes links inside, never what they point to
        else:
            os.unlink(path)
        return {}

    def watch_start(self, request):
        path = self._path(request, "path")
        recursive = request.get("recursive", False)
        if not isinstance(recursive, bool):
            raise Failure("invalid_argument", '"recursive" must be a boolean')
        if self._inotify is None:
            self._inotify = Inotify()
        watcher_id = str(self._next_watcher)
        self._watchers[watcher_id] = Watcher(self._inotify, path, recursive)
        self._next_watcher += 1
        return {"watcher": watcher_id}

    def watch_poll(self, request):
        return {"events": self._watcher(request).poll()}

    def watch_stop(self, request):
        self._watcher(request).close()
        del self._watchers[request["watcher"]]
        return {}

    def _watcher(self, request):
        watcher_id = request.get("watcher")
        if not isinstance(watcher_id, str):
            raise Failure("invalid_argument", '"watcher" must be a string')
        if watcher_id not in self._watchers:
            raise Failure("not_found", f"no watcher {watcher_id!r}")
        return self._watchers[watcher_id]

    def _path(self, request, key):
        """The absolute, normalized path that request[key] names."""
        value = request.get(key)
        if not isinstance(value, str) or not value or "\0" in value:
            raise Failure("invalid_argument", f'"{key}" must be a non-empty path')
        if value.startswith("~"):
            value = os.path.expanduser(value)
        return os.path.normpath(os.path.join(self._home, value))


OPS = {
    "stat": Server.stat,
    "list": Server.list,
    "mkdir": Server.mkdir,
    "move": Server.move,
    "remove": Server.remove,
    "watch_start": Server.watch_start,
    "watch_poll": Server.watch_poll,
    "watch_stop": Server.watch_stop,
}


def entry_info(path, st=None):
    """The EntryInfo of `path` itself (lstat: a symlink is described, not followed)."""
    if st is None:
        st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        kind = "other"
    return {
        "name": _text(os.path.basename(path) or path),  # "/" is its own name
        "type": kind,
        "path": _text(path),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "permissions": stat.filemode(st.st_mode),
        "owner": _user(st.st_uid),
        "group": _group(st.st_gid),
        "modified_time": _rfc3339(st.st_mtime_ns),
        "symlink_target": _text(os.readlink(path)) if kind == "symlink" else None,
    }


@functools.lru_cache(maxsize=256)
def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@functools.lru_cache(maxsize=256)
def _group(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _rfc3339(ns):
    seconds, fraction = divmod(ns, 1_000_000_000)
    when = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def _text(name):
    """A file name as valid Unicode: bytes that are not UTF-8 become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _message(exc):
    names = " -> ".join(_text(str(n)) for n in (exc.filename, exc.filename2) if n is not None)
    return f"{names}: {exc.strerror}" if names else str(exc)


class Inotify:
    """inotify(7) through libc, as ctypes has no binding of its own."""

    def __init__(self):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._init1 = libc.inotify_init1
            self._add_watch = libc.inotify_add_watch
            self._rm_watch = libc.inotify_rm_watch
        except (OSError, AttributeError) as exc:
            raise Failure("io", f"inotify is unavailable: {exc}") from None
        self._init1.argtypes = [ctypes.c_int]
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]

    def init(self):
        """A new non-blocking, close-on-exec inotify fd."""
        fd = self._init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            number = ctypes.get_errno()
            raise Failure("io", f"inotify is unavailable: {os.strerror(number)}")
        return fd

    def add_watch(self, fd, path, mask):
        wd = self._add_watch(fd, os.fsencode(path), mask)
        if wd < 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), path)
        return wd

    def rm_watch(self, fd, wd):
        self._rm_watch(fd, wd)


class Watcher:
    """One watched directory: its own inotify fd, read (without blocking) at each poll.

    A recursive watcher also watches every subdirectory, and adds the ones that appear. A
    directory can fill up between its creation and the watch on it, so the entries found in a
    new directory are reported as created (rarely twice, when one appears in between). A
    directory moved within the tree keeps its watches, under its new name.
    """

    def __init__(self, inotify, root, recursive):
        self._inotify = inotify
        self._root = root
        self._recursive = recursive
        self._fd = inotify.init()
        self._dirs = {}  # watch descriptor -> directory, relative to the root ("" is the root)
        self._moved_out = {}  # inotify cookie -> directory seen leaving, not yet arriving
        try:
            self._watch_tree("", None)
        except BaseException:
            os.close(self._fd)
            raise

    def poll(self):
        events = []
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                wd, mask, cookie, size = INOTIFY_EVENT.unpack_from(data, offset)
                offset += INOTIFY_EVENT.size
                name = os.fsdecode(data[offset : offset + size].rstrip(b"\0"))
                offset += size
                self._event(wd, mask, cookie, name, events)
        # A directory moved out of the tree: what happens in it is no longer ours to report.
        for moved in self._moved_out.values():
            self._unwatch_tree(moved)
        self._moved_out.clear()
        # A write is often both IN_MODIFY and IN_CLOSE_WRITE: report repeats once.
        return [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]

    def close(self):
        os.close(self._fd)

    def _event(self, wd, mask, cookie, name, events):
        if mask & IN_IGNORED:  # the watch is gone (its directory was removed)
            self._dirs.pop(wd, None)
            return
        directory = self._dirs.get(wd)
        if directory is None or not name:  # a directory's own events come from its parent too
            return
        path = os.path.join(directory, name)
        if UPLOAD_STAGING.fullmatch(name) and not mask & IN_ISDIR:
            return
        for bits, kind in EVENT_TYPES:
            if mask & bits:
                events.append({"name": _text(path), "type": kind})
                break
        if self._recursive and mask & IN_ISDIR:
            if mask & IN_CREATE:
                self._watch_tree(path, events)
            elif mask & IN_MOVED_FROM:
                self._moved_out[cookie] = path
            elif mask & IN_MOVED_TO:
                source = self._moved_out.pop(cookie, None)
                if source is None:  # moved in from outside the tree
                    self._watch_tree(path, None)
                else:  # moved within the tree: its watches stay, under the new name
                    self._rename_tree(source, path)

    def _watch_tree(self, top, events):
        """Watches `top` and, if recursive, the directories below it (not through symlinks);
        with `events`, reports what is found there as created."""
        pending = [top]
        while pending:
            directory = pending.pop()
            path = os.path.join(self._root, directory) if directory else self._root
            try:
                self._dirs[self._inotify.add_watch(self._fd, path, WATCH_MASK)] = directory
            except OSError:
                if not directory:  # the root: the watcher cannot start
                    raise
                continue  # gone or unreadable already
            if not self._recursive:
                return
            try:
                with os.scandir(path) as scan:
                    children = list(scan)
            except OSError:
                continue
            for child in children:
                relative = os.path.join(directory, child.name)
                if events is not None:
                    events.append({"name": _text(relative), "type": "create"})
                if child.is_dir(follow_symlinks=False):
                    pending.append(relative)

    def _subtree(self, top):
        """The watches on `top` and on the directories below it."""
        return [
            (wd, directory)
            for wd, directory in self._dirs.items()
            if directory == top or directory.startswith(top + "/")
        ]

    def _rename_tree(self, source, destination):
        for wd, directory in self._subtree(source):
            self._dirs[wd] = destination + directory[len(source) :]

    def _unwatch_tree(self, top):
        for wd, _ in self._subtree(top):
            self._inotify.rm_watch(self._fd, wd)
            del self._dirs[wd]


def main():
    server = Server()
    out = sys.stdout.buffer

    def send(answer):
        # Lone surrogates are valid in a Python str but not in JSON: they become "?".
        out.write((_JSON.encode(answer) + "\n").encode("utf-8", errors="replace"))
        out.flush()

    send({"ready": True})
    for line in sys.stdin.buffer:
        send(server.answer(line))


if __name__ == "__main__":
    main()
