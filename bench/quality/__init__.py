"""`disrouter bench quality`: routing quality of the live mesh against oracle, trivial and centralized routers."""
