"""jiji-net's ComponentResources and the pure planning and rendering they wire."""
