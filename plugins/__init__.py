"""Built-in plugins, installed as balans_edge.plugins.*."""
