"""Two sample Flask apps that tapline sits in front of; they know nothing of tapline."""
