"""Small building blocks shared by the services (no HTTP framework, no Paddle, no training code)."""
