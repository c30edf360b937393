"""The Bot API double lives in the package (``phase16_capstone.bot_api_double``): ``phase16.load`` points
its worker processes at it too. Tests import it from here as before."""

from phase16_capstone.bot_api_double import FakeBotAPI

__all__ = ["FakeBotAPI"]
