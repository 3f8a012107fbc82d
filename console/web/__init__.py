"""The console's pages, one router per resource; ``console.app`` assembles them. Who may do what is checked by the
dependencies in :mod:`console.web.deps`, on the server, before a route runs."""
