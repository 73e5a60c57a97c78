"""Publishers: one target kind per module, each implementing `feedback.delivery.Publisher`.

`publishers` imports `feedback`, never the reverse: the relay knows only the interface.
"""
