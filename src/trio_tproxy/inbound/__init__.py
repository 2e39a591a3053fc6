"""Inbounds: the transparent listeners (tproxy, redirect) and their socket options."""
