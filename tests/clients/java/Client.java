// An ordinary JVM app: java.net.http.HttpClient (TLS through JSSE, which reads its trust
// from the JVM's truststore, never from SSL_CERT_FILE) posting one plain and one streamed
// chat completion to api.openai.com over HTTP/1.1.
//
// Reads OPENAI_API_KEY (and OPENAI_BASE_URL if set). Prints, for each call, a line
// "status <code>" followed by the response body exactly as received, so two runs can be
// compared byte for byte. Exits 1 when a call fails or answers other than 200.
//
// Run with the JDK's single-file source launcher: `java Client.java`.

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;

public class Client {
    public static void main(String[] args) throws Exception {
        String base = System.getenv().getOrDefault("OPENAI_BASE_URL", "https://api.openai.com/v1");
        String key = System.getenv("OPENAI_API_KEY");
        HttpClient client = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(30))
                .build();
        int failures = 0;
        for (boolean stream : new boolean[] {false, true}) {
            String body = "{\"model\":\"gpt-4o-mini\",\"stream\":" + stream
                    + ",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello to the "
                    + (stream ? "streamed" : "plain") + " Java request.\"}]}";
            HttpRequest request = HttpRequest.newBuilder(URI.create(base + "/chat/completions"))
                    .timeout(Duration.ofSeconds(60))
                    .header("content-type", "application/json")
                    .header("authorization", "Bearer " + key)
                    .POST(HttpRequest.BodyPublishers.ofString(body, StandardCharsets.UTF_8))
                    .build();
            HttpResponse<byte[]> response = client.send(request, HttpResponse.BodyHandlers.ofByteArray());
            System.out.println("status " + response.statusCode());
            System.out.write(response.body());
            System.out.println();
            System.out.flush();
            if (response.statusCode() != 200) {
                failures++;
            }
        }
        System.exit(failures == 0 ? 0 : 1);
    }
}
