"""Module paths the earlier PyTorch port documented, kept so its commands run unchanged."""
