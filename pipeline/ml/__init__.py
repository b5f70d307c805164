"""The network, how it is fitted and scored, and the figures and plots made from its scores."""
