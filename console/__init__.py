"""The line console: the fleet's memory (a historian of every unit's messages) and its face (a web console).

Runs beside the central broker; acts on units only through the broker. See ``docs/console.md``.
"""
