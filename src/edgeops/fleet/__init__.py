"""The fleet side: what devices report over MQTT, stored, served and shown; and a simulated fleet to run here."""
