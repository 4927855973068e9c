"""``na64-monitor``: the control-room monitor (docs: online/monitor_cli.py and the module docstrings).

- :mod:`.model`     pure state (accumulators, alarms, rate history, sensitivity); no Qt
- :mod:`.stream`    thread-safe latest-wins :class:`~.stream.Inbox`, ZeroMQ SUB worker, feeder thread
- :mod:`.views`     the widgets (created once, updated in place)
- :mod:`.window`    the dock-based main window and its repaint timer
- :mod:`.replay`    recorded run -> the same messages as the live stream
- :mod:`.synthetic` realistic synthetic messages and a tiny publisher

Only :mod:`.views`, :mod:`.window` import Qt.
"""
