"""Foundation layer: exceptions, the clock and small utilities. Imports only the stdlib."""
