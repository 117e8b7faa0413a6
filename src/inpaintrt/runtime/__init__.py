"""Host-side math around the models: schedulers, the inpaint loop, image processing; imports no torch."""
