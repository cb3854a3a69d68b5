"""Fabric tasks for a private Docker registry on a bare IP address."""
