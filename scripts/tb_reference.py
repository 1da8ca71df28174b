#!/usr/bin/env python3
"""Read TensorBoard event files with TensorBoard's own reader and print what it sees.

    tb_reference.py LOGDIR

The reference for grdr's tfevents writer: if TensorBoard itself reads back every scalar
and text summary we wrote, at the steps we wrote them, the files are right. Prints ONE
JSON object on stdout:

    {"scalars": [{"tag", "step", "value", "wall_time"}, ...],  (non-finite values as
                                            the strings "NaN", "Infinity", "-Infinity")
     "text":    [{"tag", "step", "value"}, ...],
     "files":   [event file paths relative to LOGDIR],
     "errors":  [records TensorBoard's reader stopped at: bad CRC, truncation],
     "cross_check": {"reader", "scalars", "agrees"} or null}

Each file is read with `EventFileLoader`, the loader TensorBoard's data ingestion uses:
it checks every record's CRC and migrates legacy `simple_value` scalars to the tensor
form the scalars plugin reads. Events are listed in file order (files sorted by path)
and nothing is merged or dropped, so a caller can detect duplicated or out-of-order
steps. TensorBoard's `EventAccumulator` (used by tbparse) instead purges events it
takes for orphans of a crashed run: at a SessionLog START, the events already read at
larger steps; in a file without file_version "brain.Event:2", those of the same tags
at larger steps than a step that goes backwards.
`cross_check` reports whether tbparse's SummaryReader sees the same multiset of
(tag, step, value) scalars: a second, independent reading that also flags such purges.

A tag's plugin (scalars or text) is taken from the summary metadata of its first value
in the file, as TensorBoard does; text values are the DT_STRING tensor decoded as UTF-8.
Exits 1 when LOGDIR holds no event file. No network.
"""

import argparse
import json
import logging
import math
import os
import sys

from tensorboard.backend.event_processing import event_file_loader, io_wrapper
from tensorboard.util import tensor_util


class _DataLossLog(logging.Handler):
    """Collects the reader's 'Truncated record' messages, which it only logs at debug."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Truncated record"):
            self.messages.append(msg)


def event_files(logdir):
    """Event files under logdir (or logdir itself), sorted by relative path."""
    if os.path.isfile(logdir):
        return [logdir]
    found = []
    for root, _dirs, names in os.walk(logdir):
        for name in names:
            path = os.path.join(root, name)
            if io_wrapper.IsTensorFlowEventsFile(path):
                found.append(path)
    return sorted(found, key=lambda p: os.path.relpath(p, logdir))


def decode_text(array):
    items = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in array.flat]
    return items[0] if len(items) == 1 else "\n".join(items)


def read_file(path, scalars, texts):
    plugin_of = {}  # tag -> plugin name of its first value, as TensorBoard keys it
    for event in event_file_loader.EventFileLoader(path).Load():
        if not event.HasField("summary"):
            continue
        for value in event.summary.value:
            if value.HasField("metadata") and value.tag not in plugin_of:
                plugin_of[value.tag] = value.metadata.plugin_data.plugin_name
            plugin = plugin_of.get(value.tag, "")
            kind = value.WhichOneof("value")
            if kind == "simple_value":  # not migrated (older TensorBoard): still a scalar
                scalars.append(scalar(value.tag, event, value.simple_value))
            elif kind == "tensor" and plugin == "scalars":
                scalars.append(scalar(value.tag, event, tensor_util.make_ndarray(value.tensor).item()))
            elif kind == "tensor" and plugin == "text":
                texts.append({"tag": value.tag, "step": int(event.step),
                              "value": decode_text(tensor_util.make_ndarray(value.tensor))})


def scalar(tag, event, value):
    value = float(value)
    if not math.isfinite(value):  # JSON has no NaN/Infinity: spell them as strings
        value = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return {"tag": tag, "step": int(event.step), "value": value,
            "wall_time": float(event.wall_time)}


def cross_check(logdir, scalars):
    """Multiset comparison of (tag, step, value) against tbparse's SummaryReader."""
    try:
        import tbparse
        from tbparse import SummaryReader
    except ImportError:
        return None
    seen = []
    reader = SummaryReader(logdir, event_types={"scalars", "tensors"})
    for frame in (reader.scalars, reader.tensors):
        for row in frame.itertuples(index=False):
            try:
                seen.append((row.tag, int(row.step), repr(float(row.value))))
            except (TypeError, ValueError):  # a non-scalar tensor: not ours to compare
                pass
    # Compared as repr strings so that NaN equals NaN (ours spells it "NaN").
    spelled = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}
    ours = sorted((s["tag"], s["step"], spelled.get(s["value"], repr(s["value"]))) for s in scalars)
    return {"reader": f"tbparse {getattr(tbparse, '__version__', '?')}",
            "scalars": len(seen), "agrees": sorted(seen) == ours}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="directory holding *tfevents* files (searched recursively)")
    parser.add_argument("--no-cross-check", action="store_true", help="skip the tbparse reading")
    args = parser.parse_args()

    files = event_files(args.logdir)
    if not files:
        sys.exit(f"tb_reference: no TensorBoard event file (name containing 'tfevents') under {args.logdir}")

    log = _DataLossLog()
    tb_logger = logging.getLogger("tensorboard")
    tb_logger.addHandler(log)
    level, tb_logger.level = tb_logger.level, logging.DEBUG

    scalars, texts = [], []
    for path in files:
        read_file(path, scalars, texts)
    tb_logger.removeHandler(log)
    tb_logger.setLevel(level)
    for msg in log.messages:
        print(f"tb_reference: {msg}", file=sys.stderr)

    root = args.logdir if os.path.isdir(args.logdir) else os.path.dirname(args.logdir)
    out = {
        "scalars": scalars,
        "text": texts,
        "files": [os.path.relpath(p, root) for p in files],
        "errors": log.messages,
        "cross_check": None if args.no_cross_check else cross_check(args.logdir, scalars),
    }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
