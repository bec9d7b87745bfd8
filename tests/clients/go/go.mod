module llmsim/tests/clients/go

go 1.19
