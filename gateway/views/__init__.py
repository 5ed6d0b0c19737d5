"""HTTP views, one module per resource. Each module has ``setup(app)`` adding its routes."""
