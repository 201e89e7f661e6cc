"""lass offline trainer: corpus to bundle. The service never imports this package."""
